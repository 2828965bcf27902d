-- The same schema as on Postgres: every flush of the attempts written behind rewrites the times
-- this index held, for a list that reads one account's rows by the primary key and sorts them.
DROP INDEX attempted_domains_recent;
