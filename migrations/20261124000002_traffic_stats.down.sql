DROP TABLE "traffic_stats";
