DROP TABLE "interface_stats";
