-- q10: bids with their day and minute as text (the reference writes them to files).
-- to_char takes chrono patterns (%Y-%m-%d), as DataFusion's does.
SELECT auction, bidder, price, date_time,
       to_char(date_time, '%Y-%m-%d') AS date, to_char(date_time, '%H:%M') AS time
FROM bid
