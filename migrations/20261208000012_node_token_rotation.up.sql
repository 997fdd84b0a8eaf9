-- Node tokens can be rotated and revoked without deleting the node
-- (issue 16). A rotation keeps the token before it valid until
-- "previousTokenValidUntil" or until the new token is first used, whichever
-- comes first; a revoked node's "tokenHash" matches no token (it is not 64
-- hex digits) until a new one is issued.
ALTER TABLE "nodes"
    ADD COLUMN "previousTokenHash" TEXT,
    ADD COLUMN "previousTokenValidUntil" TIMESTAMP(3),
    ADD COLUMN "tokenRevokedAt" TIMESTAMP(3);
