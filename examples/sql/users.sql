CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email text NOT NULL);
INSERT INTO users SELECT i, 'user ' || i, 'user' || i || '@example.com' FROM generate_series(1, 20) AS i;
