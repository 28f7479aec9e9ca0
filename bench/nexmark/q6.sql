-- q6: average selling price per seller over their last 10 closed auctions.
SELECT seller, avg(final) OVER (PARTITION BY seller ORDER BY date_time ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg
FROM (
  SELECT a.id, a.seller, max(b.price) AS final, max(a.date_time) AS date_time
  FROM auction a JOIN bid b ON a.id = b.auction
  WHERE b.date_time BETWEEN a.date_time AND a.expires
  GROUP BY a.id, a.seller
) q
