-- A revoked node stays locked out: its "tokenHash" matches no token.
ALTER TABLE "nodes"
    DROP COLUMN "previousTokenHash",
    DROP COLUMN "previousTokenValidUntil",
    DROP COLUMN "tokenRevokedAt";
