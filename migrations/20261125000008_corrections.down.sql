DROP TABLE "anomalies"; DROP TABLE "calibrations";
