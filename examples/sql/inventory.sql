CREATE TABLE stock (item_id int PRIMARY KEY, on_hand int NOT NULL);
INSERT INTO stock SELECT i, 100 + i FROM generate_series(1, 30) AS i;
CREATE TABLE reservations (id serial PRIMARY KEY, item_id int NOT NULL, quantity int NOT NULL);
INSERT INTO reservations (item_id, quantity) SELECT 1 + i % 30, 1 FROM generate_series(1, 90) AS i;
