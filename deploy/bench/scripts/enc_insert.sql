\set id random(20001, 2000000000)
INSERT INTO customers (id, email, phone, salary) VALUES (:id, :id, :id, :id) ON CONFLICT (id) DO NOTHING;
