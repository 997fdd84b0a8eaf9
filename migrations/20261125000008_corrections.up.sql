-- Every calibration of a node's counters by an admin: who, when, why, and
-- the four counters before and after.
CREATE TABLE "calibrations" (
    "id" BIGSERIAL NOT NULL,
    "nodeId" TEXT NOT NULL,
    "at" TIMESTAMP(3) NOT NULL,
    "actor" TEXT NOT NULL,
    "reason" TEXT NOT NULL,
    "totalUploadBefore" BIGINT NOT NULL,
    "totalDownloadBefore" BIGINT NOT NULL,
    "periodUploadBefore" BIGINT NOT NULL,
    "periodDownloadBefore" BIGINT NOT NULL,
    "totalUploadAfter" BIGINT NOT NULL,
    "totalDownloadAfter" BIGINT NOT NULL,
    "periodUploadAfter" BIGINT NOT NULL,
    "periodDownloadAfter" BIGINT NOT NULL,

    CONSTRAINT "calibrations_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "calibrations_nodeId_fkey" FOREIGN KEY ("nodeId")
        REFERENCES "nodes"("id") ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE INDEX "calibrations_nodeId_at_idx" ON "calibrations"("nodeId", "at");

-- Deltas larger than an interface could carry (the node's maxRate over the
-- time the heartbeat covers): held here instead of being counted, until an
-- admin accepts (adds them) or discards them. The bytes stay either way.
CREATE TABLE "anomalies" (
    "id" BIGSERIAL NOT NULL,
    "nodeId" TEXT NOT NULL,
    "interface" TEXT NOT NULL,
    "ifindex" BIGINT NOT NULL,
    "detectedAt" TIMESTAMP(3) NOT NULL,
    "upload" BIGINT NOT NULL,
    "download" BIGINT NOT NULL,
    -- The time the delta covers (node clock), and the most bytes per
    -- direction the interface could have carried in it.
    "elapsedMs" BIGINT NOT NULL,
    "limitBytes" BIGINT NOT NULL,
    -- The node's period when it was detected.
    "periodStart" TIMESTAMP(3) NOT NULL,
    -- 'held', 'accepted' or 'discarded'.
    "status" TEXT NOT NULL DEFAULT 'held',
    "decidedAt" TIMESTAMP(3),
    "decidedBy" TEXT,
    "reason" TEXT,

    CONSTRAINT "anomalies_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "anomalies_status" CHECK ("status" IN ('held', 'accepted', 'discarded')),
    CONSTRAINT "anomalies_nodeId_fkey" FOREIGN KEY ("nodeId")
        REFERENCES "nodes"("id") ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE INDEX "anomalies_nodeId_idx" ON "anomalies"("nodeId", "detectedAt");
