DROP TABLE notifications;
DROP TABLE inbox_requests;
DROP TABLE connection_credentials;
DROP TABLE connections;
DROP TABLE inboxes;
