-- Load and traffic history per node, one row per node and minute (UTC),
-- for charts and time-window rankings. Rows older than the collector's
-- --history-retention are deleted.
CREATE TABLE "node_history" (
    "nodeId" TEXT NOT NULL,
    "bucket" TIMESTAMP(3) NOT NULL,
    -- Bytes counted in this minute (deltas applied), upload = tx.
    "upload" BIGINT NOT NULL DEFAULT 0,
    "download" BIGINT NOT NULL DEFAULT 0,
    -- The last load average reported in this minute.
    "load1" DOUBLE PRECISION NOT NULL,
    "load5" DOUBLE PRECISION NOT NULL,
    "load15" DOUBLE PRECISION NOT NULL,
    "heartbeats" INTEGER NOT NULL DEFAULT 0,

    CONSTRAINT "node_history_pkey" PRIMARY KEY ("nodeId", "bucket"),
    CONSTRAINT "node_history_nodeId_fkey" FOREIGN KEY ("nodeId")
        REFERENCES "nodes"("id") ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE INDEX "node_history_bucket_idx" ON "node_history"("bucket");
