-- Counter sets are ordered without the nodes' wall clocks (tally.v1, the
-- rule at the top of heartbeat.proto).
--
-- The generation the followed counter set was first applied with (0: the
-- agent did not say).
ALTER TABLE "nodes" ADD COLUMN "generation" BIGINT NOT NULL DEFAULT 0;
-- The node's clock minus the collector's at receipt of its last heartbeat,
-- in milliseconds (NULL until one came): informational, shown and warned
-- about, never a reason to refuse.
ALTER TABLE "nodes" ADD COLUMN "clockOffsetMs" BIGINT;
-- Heartbeats answered STALE: in all, in a row (0 once one is applied
-- again), the last one's time and reason.
ALTER TABLE "nodes" ADD COLUMN "staleHeartbeats" BIGINT NOT NULL DEFAULT 0;
ALTER TABLE "nodes" ADD COLUMN "staleRun" INTEGER NOT NULL DEFAULT 0;
ALTER TABLE "nodes" ADD COLUMN "lastStaleAt" TIMESTAMP(3);
ALTER TABLE "nodes" ADD COLUMN "lastStaleReason" TEXT;

-- The counter sets the collector followed for each node (the newest 64 are
-- kept): a set, or a boot, followed before never counts again.
CREATE TABLE "counter_sets" (
    "id" BIGSERIAL NOT NULL,
    "nodeId" TEXT NOT NULL,
    "bootId" TEXT NOT NULL,
    "epoch" TEXT NOT NULL,
    "generation" BIGINT NOT NULL,
    -- When the epoch began by the node's clock (Unix ns): informational.
    "epochCreatedAt" BIGINT NOT NULL,
    -- When the collector applied its first heartbeat.
    "followedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "counter_sets_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "counter_sets_nodeId_fkey" FOREIGN KEY ("nodeId")
        REFERENCES "nodes"("id") ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE UNIQUE INDEX "counter_sets_nodeId_bootId_epoch_key"
    ON "counter_sets"("nodeId", "bootId", "epoch");

-- The sets followed now.
INSERT INTO "counter_sets" ("nodeId", "bootId", "epoch", "generation", "epochCreatedAt", "followedAt")
SELECT "id", "bootId", "epoch", 0, COALESCE("epochCreatedAt", 0), COALESCE("lastSeen", "updatedAt")
FROM "nodes"
WHERE "bootId" IS NOT NULL AND "epoch" IS NOT NULL;
