DROP TABLE "nodes";
