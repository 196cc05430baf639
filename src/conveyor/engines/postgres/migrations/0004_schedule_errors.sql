-- Migration 0004: a schedule's last error (issue 14 item 8). When the scheduler's leader
-- cannot enqueue an occurrence (task unknown to the app, invalid payload, engine refusing
-- it), it stores why here, as JSON ({"message", "type", "at_ms", "occurrence_ms"}); the
-- next recorded run clears it. `conveyor schedules list` shows it.
ALTER TABLE {schema}.schedules ADD COLUMN IF NOT EXISTS last_error text;
