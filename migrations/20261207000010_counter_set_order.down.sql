DROP TABLE "counter_sets";
ALTER TABLE "nodes" DROP COLUMN "lastStaleReason", DROP COLUMN "lastStaleAt",
    DROP COLUMN "staleRun", DROP COLUMN "staleHeartbeats", DROP COLUMN "clockOffsetMs",
    DROP COLUMN "generation";
