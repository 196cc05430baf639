-- Placeholder: number reserved for branch `pgchurn` (its migration replaces this file when
-- both are merged). Migration numbers must run 1..n without a gap, and 0015
-- (bulk enqueue) was written before that branch landed. Changes nothing.
SELECT 1;
