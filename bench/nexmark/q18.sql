-- q18: each bidder's last bid on each auction.
SELECT auction, bidder, price, channel, url, date_time
FROM (
  SELECT *, row_number() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC) AS rank_number
  FROM bid
) q
WHERE rank_number <= 1
