-- durably schema version 6 (PostgreSQL): a run whose end nobody outside
-- its process has asked to hear of is ended without a NOTIFY. A run created
-- already claimed by a worker in the starting process (app.start with a
-- worker there) is quiet: its waiters in that process are answered by the
-- worker itself. Whoever waits for it elsewhere clears the flag under the
-- row's lock before waiting (storage.watch_runs), so its end is announced.
-- A NOTIFY costs the server a queue entry and a wake-up of every listening
-- session, and the waiting process a thread wake-up: about a tenth of a
-- lone run's time on a 2-core machine.
ALTER TABLE durably.runs ADD COLUMN quiet boolean NOT NULL DEFAULT false
