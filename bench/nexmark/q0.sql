-- q0: pass-through (measures the cost of ingest and output alone).
SELECT auction, bidder, price, date_time FROM bid
