-- q19: the 10 highest bids of each auction (equal prices ranked by time, so the result
-- is deterministic).
SELECT auction, bidder, price, channel, url, date_time, rank_number
FROM (
  SELECT *, row_number() OVER (PARTITION BY auction ORDER BY price DESC, date_time ASC) AS rank_number
  FROM bid
) q
WHERE rank_number <= 10
