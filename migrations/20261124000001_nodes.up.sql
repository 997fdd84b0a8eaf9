-- The nodes of the fleet. Column names follow the seed's convention
-- (quoted camelCase), so that the seed's backend can read them too.
CREATE TABLE "nodes" (
    "id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    -- SHA-256 of the node's secret token, hex; the token itself is never stored.
    "tokenHash" TEXT NOT NULL,
    "hostname" TEXT,
    "kernel" TEXT,
    "agentVersion" TEXT,
    "source" TEXT,
    "lastSeen" TIMESTAMP(3),
    "load1" DOUBLE PRECISION,
    "load5" DOUBLE PRECISION,
    "load15" DOUBLE PRECISION,
    -- Where the node's raw counters started (see proto/tally/v1), and the
    -- last sequence applied within that epoch.
    "bootId" TEXT,
    "epoch" TEXT,
    "epochCreatedAt" BIGINT,
    "lastSequence" BIGINT,
    -- When the node's interface_stats rows were last rewritten.
    "interfacesUpdatedAt" TIMESTAMP(3),
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "nodes_pkey" PRIMARY KEY ("id")
);

CREATE UNIQUE INDEX "nodes_name_key" ON "nodes"("name");
