CREATE TABLE orders (id int PRIMARY KEY, user_id int NOT NULL, item_id int NOT NULL, quantity int NOT NULL);
INSERT INTO orders SELECT i, 1 + i % 20, 1 + i % 30, 1 + i % 5 FROM generate_series(1, 1000) AS i;
