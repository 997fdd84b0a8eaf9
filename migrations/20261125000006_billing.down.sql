DROP TABLE "billing_periods"; DROP TABLE "node_settings"; DROP TABLE "billing_defaults";
