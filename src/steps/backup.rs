//! Backup: pg_dump into the backup directory, a manifest, read-back verification, retention, restore.
