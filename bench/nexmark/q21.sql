-- q21: a channel id for each bid: fixed for the hot channels, else from the URL.
SELECT auction, bidder, price, channel,
       CASE
         WHEN lower(channel) = 'apple' THEN '0'
         WHEN lower(channel) = 'google' THEN '1'
         WHEN lower(channel) = 'facebook' THEN '2'
         WHEN lower(channel) = 'baidu' THEN '3'
         ELSE regexp_replace(url, '^.*channel_id=([^&]*).*$', '\1')
       END AS channel_id
FROM bid
WHERE url LIKE '%channel_id%' OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')
