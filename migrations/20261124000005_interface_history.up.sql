-- Per-interface traffic per node and minute: the bytes each interface
-- received (rx) and sent (tx) in that minute, from the interface's raw
-- counters as the node's per-interface rows are refreshed (at most every
-- 10 s). Informational: the node's exact totals are in "traffic_stats".
CREATE TABLE "interface_history" (
    "nodeId" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "bucket" TIMESTAMP(3) NOT NULL,
    "rxBytes" BIGINT NOT NULL DEFAULT 0,
    "txBytes" BIGINT NOT NULL DEFAULT 0,

    CONSTRAINT "interface_history_pkey" PRIMARY KEY ("nodeId", "bucket", "name"),
    CONSTRAINT "interface_history_nodeId_fkey" FOREIGN KEY ("nodeId")
        REFERENCES "nodes"("id") ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE INDEX "interface_history_bucket_idx" ON "interface_history"("bucket");
