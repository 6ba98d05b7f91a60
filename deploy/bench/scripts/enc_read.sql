\set id random(1, 10000)
SELECT email, phone, salary FROM customers WHERE id = :id;
