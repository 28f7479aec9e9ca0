-- q10: bids with their day and minute as text (the reference writes them to files).
SELECT auction, bidder, price, date_time,
       to_char(date_time, 'YYYY-MM-DD') AS date, to_char(date_time, 'HH24:MI') AS time
FROM bid
