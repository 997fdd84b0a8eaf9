-- Exactly the seed's traffic_stats (a compatibility contract, column for
-- column, index and constraint names included). "updatedAt" has no default
-- there: the collector sets it on every write.
CREATE TABLE "traffic_stats" (
    "id" TEXT NOT NULL,
    "nodeId" TEXT NOT NULL,
    "totalUpload" BIGINT NOT NULL DEFAULT 0,
    "totalDownload" BIGINT NOT NULL DEFAULT 0,
    "periodUpload" BIGINT NOT NULL DEFAULT 0,
    "periodDownload" BIGINT NOT NULL DEFAULT 0,
    "periodStart" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "lastRxBytes" BIGINT,
    "lastTxBytes" BIGINT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "traffic_stats_pkey" PRIMARY KEY ("id")
);

CREATE UNIQUE INDEX "traffic_stats_nodeId_key" ON "traffic_stats"("nodeId");

ALTER TABLE "traffic_stats" ADD CONSTRAINT "traffic_stats_nodeId_fkey"
    FOREIGN KEY ("nodeId") REFERENCES "nodes"("id") ON DELETE CASCADE ON UPDATE CASCADE;
