-- durably schema version 5 (SQLite): the runs that ended, in commit order.
-- SQLite has no NOTIFY to name them, so a process waiting for many results
-- used to re-read every run it waited for on each commit it saw; now it
-- reads what ended since it last looked. A trigger records every way a run
-- can end (a worker's commit, a cancel, a failed start) and keeps the last
-- 10,000 ends: a reader that fell further behind re-reads everything once.
CREATE TABLE durably_ended (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL
)
;
CREATE TRIGGER durably_run_ended AFTER UPDATE OF status ON durably_runs
WHEN NEW.status IN ('completed', 'failed', 'cancelled')
 AND OLD.status NOT IN ('completed', 'failed', 'cancelled')
BEGIN
    INSERT INTO durably_ended (run_id) VALUES (NEW.id);
    DELETE FROM durably_ended WHERE seq <= (SELECT max(seq) FROM durably_ended) - 10000;
END
