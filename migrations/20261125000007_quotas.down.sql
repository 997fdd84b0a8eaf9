DROP TABLE "webhook_deliveries"; DROP TABLE "quota_events";
