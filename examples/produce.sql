-- Enqueue a finished conversation's learning work from any service, in plain SQL:
-- psql "$ANGELA_QUEUE_DSN" -f produce.sql. The database fills in the rest (boost from
-- the rules, tier, deadline, aging key) and wakes the idle workers when this commits.
INSERT INTO angela_queue.tasks (queue, kind, payload, priority, batch_key) VALUES
  ('learning', 'conversation.analyze',
   '{"conversation_id": "c102", "author": "david", "text": "Urgent: can you move my 3pm?"}', 7, NULL),
  ('learning', 'pattern.learn', '{"conversation_id": "c102", "author": "david"}', 5, NULL),
  ('learning', 'insight.extract', '{"conversation_id": "c102", "author": "david"}', 4, NULL),
  ('learning', 'memory.consolidate', '{"conversation_id": "c102", "author": "david"}', 2, 'david')
RETURNING id, kind, priority + boost AS base, tier;
