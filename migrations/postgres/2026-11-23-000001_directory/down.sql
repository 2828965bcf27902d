DROP TABLE team_members;
DROP TABLE teams;
DROP TABLE users;
DROP TABLE account_sending_domains;
DROP TABLE accounts;
