-- Per-entry raw counters of a node's current epoch, as of its last applied
-- heartbeat (JSON, written with every heartbeat): what each interface's
-- delta is measured against, so that a node can count only some classes
-- of interface and a too-large delta can be held per interface.
ALTER TABLE "nodes" ADD COLUMN "positions" JSONB;
-- Traffic by address family since the node was enrolled (bytes counted by
-- the node's rule, like the totals; upload = tx).
ALTER TABLE "nodes" ADD COLUMN "ipv4Upload" BIGINT NOT NULL DEFAULT 0;
ALTER TABLE "nodes" ADD COLUMN "ipv4Download" BIGINT NOT NULL DEFAULT 0;
ALTER TABLE "nodes" ADD COLUMN "ipv6Upload" BIGINT NOT NULL DEFAULT 0;
ALTER TABLE "nodes" ADD COLUMN "ipv6Download" BIGINT NOT NULL DEFAULT 0;

ALTER TABLE "interface_stats" ADD COLUMN "kind" TEXT NOT NULL DEFAULT 'physical';
ALTER TABLE "interface_stats" ADD COLUMN "defaultRoute" BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE "interface_stats" ADD COLUMN "ipv4RxBytes" BIGINT;
ALTER TABLE "interface_stats" ADD COLUMN "ipv4TxBytes" BIGINT;
ALTER TABLE "interface_stats" ADD COLUMN "ipv6RxBytes" BIGINT;
ALTER TABLE "interface_stats" ADD COLUMN "ipv6TxBytes" BIGINT;
