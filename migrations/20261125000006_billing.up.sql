-- Billing settings and closed periods (issue 6). A node's setting that is
-- NULL in "node_settings" (or a node without a row) takes the fleet's
-- value from "billing_defaults", which has exactly one row.
CREATE TABLE "billing_defaults" (
    "id" BOOLEAN NOT NULL DEFAULT TRUE,
    -- The day of the month periods start on (1-31; clamped to the month's
    -- last day), at local midnight in "timeZone". NULL: periods end only
    -- on request (or on the collector's --period-reset schedule).
    "anchorDay" INTEGER,
    -- An IANA time zone name, e.g. 'Europe/Berlin'.
    "timeZone" TEXT NOT NULL DEFAULT 'UTC',
    -- How usage is billed: 'sum' (upload + download), 'max' (the larger),
    -- 'upload', 'download', or 'p95' (95th percentile of 5-minute rates).
    "mode" TEXT NOT NULL DEFAULT 'sum',
    -- Which interfaces count: 'all' (all but loopback, the seed's rule) or
    -- 'uplink' (physical interfaces and those carrying a default route).
    "countRule" TEXT NOT NULL DEFAULT 'all',
    -- The quota per period, in bytes (in bytes per second for 'p95');
    -- NULL: none.
    "quota" BIGINT,
    -- Percentages of the quota at which a quota event fires, once per period.
    "thresholds" INTEGER[] NOT NULL DEFAULT '{80,100}',
    -- The most bytes per second one interface is taken to carry in one
    -- direction; a larger delta is held as an anomaly. 100 Gbit/s.
    "maxRate" BIGINT NOT NULL DEFAULT 12500000000,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "billing_defaults_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "billing_defaults_one_row" CHECK ("id"),
    CONSTRAINT "billing_defaults_anchor" CHECK ("anchorDay" BETWEEN 1 AND 31),
    CONSTRAINT "billing_defaults_mode"
        CHECK ("mode" IN ('sum', 'max', 'upload', 'download', 'p95')),
    CONSTRAINT "billing_defaults_rule" CHECK ("countRule" IN ('all', 'uplink')),
    CONSTRAINT "billing_defaults_quota" CHECK ("quota" > 0),
    CONSTRAINT "billing_defaults_rate" CHECK ("maxRate" > 0)
);

INSERT INTO "billing_defaults" DEFAULT VALUES;

CREATE TABLE "node_settings" (
    "nodeId" TEXT NOT NULL,
    "anchorDay" INTEGER,
    "timeZone" TEXT,
    "mode" TEXT,
    "countRule" TEXT,
    "quota" BIGINT,
    "thresholds" INTEGER[],
    "maxRate" BIGINT,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "node_settings_pkey" PRIMARY KEY ("nodeId"),
    CONSTRAINT "node_settings_nodeId_fkey" FOREIGN KEY ("nodeId")
        REFERENCES "nodes"("id") ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT "node_settings_anchor" CHECK ("anchorDay" BETWEEN 1 AND 31),
    CONSTRAINT "node_settings_mode"
        CHECK ("mode" IN ('sum', 'max', 'upload', 'download', 'p95')),
    CONSTRAINT "node_settings_rule" CHECK ("countRule" IN ('all', 'uplink')),
    CONSTRAINT "node_settings_quota" CHECK ("quota" > 0),
    CONSTRAINT "node_settings_rate" CHECK ("maxRate" > 0)
);

-- Every closed period of every node: what it counted, its peak and 95th
-- percentile 5-minute rates (bytes per second, the larger direction), and
-- the billing mode it was closed under.
CREATE TABLE "billing_periods" (
    "id" BIGSERIAL NOT NULL,
    "nodeId" TEXT NOT NULL,
    "start" TIMESTAMP(3) NOT NULL,
    "end" TIMESTAMP(3) NOT NULL,
    "upload" BIGINT NOT NULL,
    "download" BIGINT NOT NULL,
    "peakRate" BIGINT NOT NULL,
    "p95Rate" BIGINT NOT NULL,
    "mode" TEXT NOT NULL,
    -- 'schedule' (the anchor day came) or 'request' (a manual reset).
    "closedBy" TEXT NOT NULL,
    "closedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "billing_periods_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "billing_periods_nodeId_fkey" FOREIGN KEY ("nodeId")
        REFERENCES "nodes"("id") ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE INDEX "billing_periods_nodeId_start_idx" ON "billing_periods"("nodeId", "start");
