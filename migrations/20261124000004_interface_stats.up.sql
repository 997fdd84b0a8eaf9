-- Per-interface counters of each node: the raw values of the node's
-- current epoch as its last applied heartbeat reported them.
CREATE TABLE "interface_stats" (
    "nodeId" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "ifindex" BIGINT NOT NULL,
    "state" TEXT NOT NULL,
    "rxBytes" BIGINT NOT NULL,
    "rxPackets" BIGINT NOT NULL,
    "txBytes" BIGINT NOT NULL,
    "txPackets" BIGINT NOT NULL,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "interface_stats_pkey" PRIMARY KEY ("nodeId", "name"),
    CONSTRAINT "interface_stats_nodeId_fkey" FOREIGN KEY ("nodeId")
        REFERENCES "nodes"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
