//! The embedded PostgreSQL: what `serve` runs when no `DATABASE_URL` is
//! given, and what the test harness starts its throwaway clusters with.
//!
//! It finds the server binaries on the machine, initialises a cluster the
//! first time (trust auth, reachable only through a Unix socket inside the
//! cluster's own mode-0700 directory), starts it and stops it. When the
//! process runs as root it runs `initdb`, `pg_ctl` and so `postgres` as the
//! unprivileged `postgres` user, since PostgreSQL refuses to run as root.
//! When TimescaleDB is installed for the server, it is preloaded.

use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use nix::unistd::{Gid, Uid, User, chown};

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server found (looked for initdb and postgres in {looked}). Install one \
         (Debian/Ubuntu: `apt-get install postgresql`; macOS: `brew install postgresql@16`), \
         pass --pg-bindir, or set DATABASE_URL to an existing server"
    )]
    NotFound { looked: String },
    #[error(
        "running as root, but there is no `postgres` user to run PostgreSQL as (it refuses to run as root); create one or run as a normal user"
    )]
    NoPostgresUser,
    #[error(
        "the `postgres` user cannot reach {dir}: {blocker} is not searchable by others; choose a --data-dir outside it (e.g. under /var/lib)"
    )]
    Unreachable { dir: PathBuf, blocker: PathBuf },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot change owner of {path}: {source}")]
    Chown { path: PathBuf, source: nix::Error },
}

/// How to run a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The cluster's directory (PGDATA). Created when missing.
    pub data_dir: PathBuf,
    /// Server binaries; found on the machine when `None`.
    pub bindir: Option<PathBuf>,
    /// fsync and full-page writes on. Off only for throwaway test clusters.
    pub durable: bool,
    /// Port number: part of the socket's name (no TCP listener is opened
    /// unless `tcp` is set).
    pub port: u16,
    /// Also listen on 127.0.0.1:`port`.
    pub tcp: bool,
}

#[derive(Debug)]
pub struct Cluster {
    opts: ClusterOptions,
    bindir: PathBuf,
    /// Whom the server runs as when we are root.
    run_as: Option<(Uid, Gid)>,
    timescaledb: bool,
}

impl Cluster {
    /// Prepares (and on first use initialises) the cluster; does not start it.
    pub fn open(opts: ClusterOptions) -> Result<Self, EmbeddedError> {
        let bindir = find_bindir(opts.bindir.as_deref())?;
        let run_as = if Uid::effective().is_root() {
            let user = User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or(EmbeddedError::NoPostgresUser)?;
            Some((user.uid, user.gid))
        } else {
            None
        };
        let timescaledb = timescaledb_installed(&bindir);
        let cluster = Self {
            opts,
            bindir,
            run_as,
            timescaledb,
        };
        cluster.init_if_needed()?;
        Ok(cluster)
    }

    pub fn data_dir(&self) -> &Path {
        &self.opts.data_dir
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Whether the TimescaleDB extension is installed for this server (and
    /// so preloaded).
    pub fn has_timescaledb(&self) -> bool {
        self.timescaledb
    }

    /// key=value connection string for database `db`, through the socket.
    pub fn conn_string(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.opts.data_dir.display(),
            self.opts.port
        )
    }

    fn init_if_needed(&self) -> Result<(), EmbeddedError> {
        let dir = &self.opts.data_dir;
        if dir.join("PG_VERSION").exists() {
            return self.write_settings();
        }
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = self.run_as {
            chown(dir, Some(uid), Some(gid)).map_err(|source| EmbeddedError::Chown {
                path: dir.clone(),
                source,
            })?;
            check_reachable(dir)?;
        }
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(dir).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]);
        if !self.opts.durable {
            cmd.arg("--no-sync");
        }
        run(cmd, "initdb")?;
        let conf = dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf)?;
        text.push_str("\ninclude_if_exists = 'agent_telemetry.conf'\n");
        fs::write(&conf, text)?;
        self.write_settings()
    }

    /// Our settings, rewritten at every open so that they follow the options
    /// and what is installed (e.g. TimescaleDB added later).
    fn write_settings(&self) -> Result<(), EmbeddedError> {
        let o = &self.opts;
        let mut s =
            String::from("# Written by agent-telemetry at every start; edits are overwritten.\n");
        s += &format!(
            "listen_addresses = '{}'\n",
            if o.tcp { "127.0.0.1" } else { "" }
        );
        s += &format!("unix_socket_directories = '{}'\n", o.data_dir.display());
        s += &format!("port = {}\n", o.port);
        s += "max_connections = 200\n";
        let durable = if o.durable { "on" } else { "off" };
        s += &format!("fsync = {durable}\nfull_page_writes = {durable}\n");
        if self.timescaledb {
            s += "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n";
        }
        let path = o.data_dir.join("agent_telemetry.conf");
        fs::write(&path, s)?;
        if let Some((uid, gid)) = self.run_as {
            chown(&path, Some(uid), Some(gid))
                .map_err(|source| EmbeddedError::Chown { path, source })?;
        }
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.opts.data_dir);
        cmd.output().map(|o| o.status.success()).unwrap_or(false)
    }

    /// Starts the server unless it is running already (e.g. left behind by
    /// a killed service: it is then simply used).
    pub fn start(&self) -> Result<(), EmbeddedError> {
        if self.is_running() {
            return Ok(());
        }
        self.pg_ctl(&["start", "-w", "-t", "120"])
    }

    pub fn stop(&self) -> Result<(), EmbeddedError> {
        if !self.is_running() {
            return Ok(());
        }
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "120"])
    }

    /// Crash-restarts the server (`-m immediate`): what fault tests use.
    pub fn restart_immediate(&self) -> Result<(), EmbeddedError> {
        self.pg_ctl(&["restart", "-m", "immediate", "-w", "-t", "120"])
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), EmbeddedError> {
        let mut cmd = self.command("pg_ctl");
        cmd.args(args)
            .arg("-D")
            .arg(&self.opts.data_dir)
            .arg("-l")
            .arg(self.opts.data_dir.join("server.log"));
        run(cmd, &format!("pg_ctl {}", args[0])).map_err(|e| match e {
            EmbeddedError::Command { what, detail } => {
                let log =
                    fs::read_to_string(self.opts.data_dir.join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                EmbeddedError::Command {
                    what,
                    detail: format!("{detail}\nserver log:\n{}", tail.join("\n")),
                }
            }
            other => other,
        })?;
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        // A cwd the server's user may not enter (root's home) upsets initdb.
        cmd.current_dir(self.opts.data_dir.parent().unwrap_or(Path::new("/")));
        cmd.env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw()).env("HOME", "/tmp");
        }
        cmd
    }
}

fn run(mut cmd: Command, what: &str) -> Result<Output, EmbeddedError> {
    let out = cmd.output().map_err(|e| EmbeddedError::Command {
        what: what.into(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        let detail = format!(
            "{}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return Err(EmbeddedError::Command {
            what: what.into(),
            detail,
        });
    }
    Ok(out)
}

/// Every ancestor of `dir` must be searchable by others for the `postgres`
/// user to get in (a home directory is often mode 0700).
fn check_reachable(dir: &Path) -> Result<(), EmbeddedError> {
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor)?;
        if meta.permissions().mode() & 0o001 == 0 {
            return Err(EmbeddedError::Unreachable {
                dir: dir.to_owned(),
                blocker: ancestor.to_owned(),
            });
        }
    }
    Ok(())
}

/// The server binaries: the explicit directory, `pg_config --bindir`, the
/// newest /usr/lib/postgresql/*/bin, or PATH.
pub fn find_bindir(explicit: Option<&Path>) -> Result<PathBuf, EmbeddedError> {
    let has_server = |d: &Path| {
        d.join("initdb").is_file() && d.join("postgres").is_file() && d.join("pg_ctl").is_file()
    };
    let mut looked = Vec::new();
    if let Some(d) = explicit {
        if has_server(d) {
            return Ok(d.to_owned());
        }
        looked.push(d.display().to_string());
        return Err(EmbeddedError::NotFound {
            looked: looked.join(", "),
        });
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&d) {
            return Ok(d);
        }
        looked.push(format!("{} (pg_config --bindir)", d.display()));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    looked.push("/usr/lib/postgresql/*/bin".into());
    if let Some((_, d)) = versions.into_iter().rev().find(|(_, d)| has_server(d)) {
        return Ok(d);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_server(&d) {
                return Ok(fs::canonicalize(d.join("postgres"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_owned))
                    .unwrap_or(d));
            }
        }
        looked.push("PATH".into());
    }
    Err(EmbeddedError::NotFound {
        looked: looked.join(", "),
    })
}

/// TimescaleDB is installed for a server when its control file is in the
/// server's extension directory and its library in the server's lib dir.
pub fn timescaledb_installed(bindir: &Path) -> bool {
    let pg_config = |arg: &str| -> Option<PathBuf> {
        let out = Command::new(bindir.join("pg_config"))
            .arg(arg)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    };
    match (pg_config("--sharedir"), pg_config("--pkglibdir")) {
        (Some(share), Some(lib)) => {
            share.join("extension/timescaledb.control").is_file()
                && lib.join("timescaledb.so").is_file()
        }
        _ => false,
    }
}
