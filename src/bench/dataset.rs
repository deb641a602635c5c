//! The fixed event set every case loads: generated once per harness run,
//! kept as protobuf batches (what the service receives, case B) and as the
//! service's own binary COPY encoding of the same rows (what `psql \copy`
//! reads in case A, and what the INSERTs of case C bind), so that every case
//! stores byte-for-byte the same values.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::SystemTime};

use bytes::BytesMut;

use crate::{
    config::Limits,
    copy::encode::{self, HEADER, TRAILER},
    loadgen::r#gen::Generator,
    pb,
    validate::{self, TimeWindow},
};

use super::BenchError;

pub struct Dataset {
    /// The events in batches, as loadgen sends them.
    pub batches: Arc<Vec<Vec<pb::AgentEvent>>>,
    /// Project names in the order their ids are assigned (1, 2, …) on a
    /// fresh database.
    pub projects: Vec<String>,
    /// The developers the events name, in key order (their ids are 1, 2, …).
    pub users: Vec<pb::User>,
    /// Every row in binary COPY format, back to back.
    pub rows: BytesMut,
    /// End offset of each row in `rows`.
    pub row_ends: Vec<usize>,
    /// Earliest and latest timestamp of the set (µs since 2000-01-01).
    pub span_us: (i64, i64),
}

impl Dataset {
    /// `events` events from the loadgen generator (fixed seed), timed from
    /// 20 minutes ago so that no row is late or in the future while the
    /// harness runs.
    pub fn generate(events: usize, batch_size: usize) -> Result<Self, BenchError> {
        let now_us = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_micros() as i64;
        let mut generator = Generator::new(20_260_101, 20).with_start_us(now_us - 1_200_000_000);
        let batch_size = batch_size.max(1);
        let mut batches = Vec::with_capacity(events.div_ceil(batch_size));
        let mut left = events;
        while left > 0 {
            let n = left.min(batch_size);
            batches.push(generator.events(n));
            left -= n;
        }
        let names: BTreeMap<&str, i32> = batches
            .iter()
            .flatten()
            .map(|e| (e.project.as_str(), 0))
            .collect();
        let projects: Vec<String> = names.keys().map(|s| (*s).to_owned()).collect();
        let ids: BTreeMap<&str, i32> = projects
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_str(), i as i32 + 1))
            .collect();
        // The developers, numbered in key order as `create_dims` makes them.
        let mut users: Vec<pb::User> = Vec::new();
        for u in batches.iter().flatten().filter_map(|e| e.user.as_ref()) {
            if !users.iter().any(|k| k.key == u.key) {
                users.push(u.clone());
            }
        }
        users.sort_by(|a, b| a.key.cmp(&b.key));
        let user_ids: BTreeMap<&str, i32> = users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.key.as_str(), i as i32 + 1))
            .collect();
        let limits = Limits::default();
        let window = TimeWindow::around(SystemTime::now(), &limits);
        let mut rows = BytesMut::with_capacity(events * 700);
        let mut row_ends = Vec::with_capacity(events);
        let mut span_us = (i64::MAX, i64::MIN);
        for (index, ev) in batches.iter().flatten().enumerate() {
            let row = validate::validate_event(ev, index as u32, &limits, window)
                .map_err(|r| BenchError::Dataset(format!("generated event {index}: {r:?}")))?;
            let user = ev.user.as_ref().map(|u| user_ids[u.key.as_str()]);
            encode::encode_event(&mut rows, &row, ids[ev.project.as_str()], user);
            span_us = (span_us.0.min(row.ts_us), span_us.1.max(row.ts_us));
            row_ends.push(rows.len());
        }
        Ok(Self {
            batches: Arc::new(batches),
            projects,
            users,
            rows,
            row_ends,
            span_us,
        })
    }

    pub fn len(&self) -> usize {
        self.row_ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.row_ends.is_empty()
    }

    /// Bytes of row `i` in binary COPY format.
    pub fn row(&self, i: usize) -> &[u8] {
        self.rows_bytes(i..i + 1)
    }

    /// Bytes of rows `range`.
    fn rows_bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        if range.is_empty() {
            return &[];
        }
        let start = range.start.checked_sub(1).map_or(0, |i| self.row_ends[i]);
        &self.rows[start..self.row_ends[range.end - 1]]
    }

    /// Writes rows `range` as a complete binary COPY file.
    pub fn write_copy_file(
        &self,
        path: &Path,
        range: std::ops::Range<usize>,
    ) -> Result<(), BenchError> {
        let mut data = Vec::with_capacity(HEADER.len() + TRAILER.len() + self.rows.len());
        data.extend_from_slice(HEADER);
        data.extend_from_slice(self.rows_bytes(range));
        data.extend_from_slice(TRAILER);
        std::fs::write(path, data).map_err(|e| BenchError::Io(path.display().to_string(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_an_encoded_row() {
        let d = Dataset::generate(3, 2).expect("dataset");
        assert_eq!(d.batches.len(), 2);
        assert_eq!(d.len(), 3);
        let f = encode::row_fields(d.row(1));
        assert_eq!(
            f.len(),
            crate::row::Table::AgentEvents.field_count() as usize
        );
        // id (uuid, 16 bytes), timestamp (8 bytes), event_type (text).
        assert_eq!(f[0].map(<[u8]>::len), Some(16));
        assert_eq!(f[1].map(<[u8]>::len), Some(8));
        let ev = &d.batches[0][1];
        assert_eq!(f[2], Some(ev.event_type.as_bytes()));
        assert_eq!(
            uuid::Uuid::from_slice(f[0].unwrap()).unwrap().to_string(),
            ev.id
        );
    }
}
