-- Rates not computed yet are written down as 0.
UPDATE "billing_periods" SET "peakRate" = COALESCE("peakRate", 0), "p95Rate" = COALESCE("p95Rate", 0)
WHERE "peakRate" IS NULL OR "p95Rate" IS NULL;
ALTER TABLE "billing_periods" ALTER COLUMN "peakRate" SET NOT NULL,
    ALTER COLUMN "p95Rate" SET NOT NULL;
