-- Migration 0011: reserved for branch `pgonehop` (the one-hop pickup), written in parallel
-- with 0012. Migrations are numbered 1..n, so this empty file stands in for it until that
-- branch is merged; the merge replaces this file with pgonehop's 0011.
SELECT 1;
