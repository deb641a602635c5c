-- A key may belong to one developer (`keys create --user KEY`): a personal
-- key, as an editor extension or one developer's OTLP exporter holds. Rows
-- sent with it that name no developer are that developer's; rows that name
-- one keep it (docs/reliability.md, "Keys and developers"). The key as
-- clients send it, within the limit of every key field; resolved to a user
-- through the cache like a row's own.
ALTER TABLE api_keys ADD COLUMN user_key text CHECK (octet_length(user_key) BETWEEN 1 AND 1024);
