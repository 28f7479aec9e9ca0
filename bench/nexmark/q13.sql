-- q13: bounded side input join (the side table is looked up by processing time).
SELECT b.auction, b.bidder, b.price, b.date_time, s.value
FROM (SELECT *, auction % 10000 AS side_key FROM bid) b
JOIN side_input FOR SYSTEM_TIME AS OF PROCTIME() AS s ON b.side_key = s.key
