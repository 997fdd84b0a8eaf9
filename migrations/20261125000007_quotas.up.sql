-- Quota threshold crossings: at most one per node, period and threshold.
CREATE TABLE "quota_events" (
    "id" BIGSERIAL NOT NULL,
    "nodeId" TEXT NOT NULL,
    "periodStart" TIMESTAMP(3) NOT NULL,
    -- The threshold crossed, in percent of the quota.
    "threshold" INTEGER NOT NULL,
    "usage" BIGINT NOT NULL,
    "quota" BIGINT NOT NULL,
    "mode" TEXT NOT NULL,
    "at" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "quota_events_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "quota_events_once" UNIQUE ("nodeId", "periodStart", "threshold"),
    CONSTRAINT "quota_events_nodeId_fkey" FOREIGN KEY ("nodeId")
        REFERENCES "nodes"("id") ON DELETE CASCADE ON UPDATE CASCADE
);

-- Webhook calls to make (an outbox): written in the transaction that
-- records the event, delivered and retried by any collector replica.
CREATE TABLE "webhook_deliveries" (
    "id" BIGSERIAL NOT NULL,
    "event" TEXT NOT NULL,
    "payload" JSONB NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "nextAttemptAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "deliveredAt" TIMESTAMP(3),
    "lastError" TEXT,

    CONSTRAINT "webhook_deliveries_pkey" PRIMARY KEY ("id")
);

CREATE INDEX "webhook_deliveries_pending_idx" ON "webhook_deliveries"("nextAttemptAt")
    WHERE "deliveredAt" IS NULL;
