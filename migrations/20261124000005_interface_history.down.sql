DROP TABLE "interface_history";
