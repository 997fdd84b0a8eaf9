-- A closed period's rates are computed after it is archived, by the
-- upkeep, outside the locks of the heartbeat batch (or reset) that closed
-- it: a month of history per node is too much to read while hundreds of
-- nodes' rows are locked. NULL until then (within a minute).
ALTER TABLE "billing_periods" ALTER COLUMN "peakRate" DROP NOT NULL,
    ALTER COLUMN "p95Rate" DROP NOT NULL;
