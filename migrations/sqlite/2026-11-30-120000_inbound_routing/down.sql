DROP TABLE round_robin_picks;
DROP TABLE round_robin_positions;
