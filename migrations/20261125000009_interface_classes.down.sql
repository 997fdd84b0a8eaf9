ALTER TABLE "interface_stats" DROP COLUMN "ipv6TxBytes", DROP COLUMN "ipv6RxBytes",
    DROP COLUMN "ipv4TxBytes", DROP COLUMN "ipv4RxBytes", DROP COLUMN "defaultRoute",
    DROP COLUMN "kind";
ALTER TABLE "nodes" DROP COLUMN "ipv6Download", DROP COLUMN "ipv6Upload",
    DROP COLUMN "ipv4Download", DROP COLUMN "ipv4Upload", DROP COLUMN "positions";
