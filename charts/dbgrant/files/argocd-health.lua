-- Argo CD health check for dbgrant's five kinds (MongoTarget,
-- MongoRoleBinding, CosmosTarget, CosmosRoleDefinition, CosmosRoleBinding).
-- dbgrant reports kstatus conditions: Ready, plus Reconciling (work in
-- progress) or Stalled (waits for someone to change something).
--
--   being deleted                         -> Progressing (revoking access)
--   no status yet, or status for an older
--   generation than metadata.generation   -> Progressing
--   reason Observing (the target is in
--   Observe mode: nothing is written)     -> Suspended
--   Ready=True                            -> Healthy
--   Stalled=True (denied, invalid, ...)   -> Degraded
--   Ready=False reason Expired            -> Degraded (access ended; extend or remove it)
--   anything else                         -> Progressing
--
-- Tested under gopher-lua, the Lua engine Argo CD embeds, against a status
-- fixture for every reason dbgrant sets: tests/health/.
local hs = {}

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "being deleted: dbgrant is revoking its access"
  return hs
end

local ready = nil
local stalled = nil
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" then
      ready = c
    elseif c.type == "Stalled" then
      stalled = c
    end
  end
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "waiting for dbgrant to reconcile it"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = ready.observedGeneration
if observed == nil and obj.status ~= nil then
  observed = obj.status.observedGeneration
end
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "dbgrant has not reconciled generation " .. tostring(generation) .. " yet"
  return hs
end

local function said(c)
  local m = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    m = m .. ": " .. c.message
  end
  return m
end

if ready.reason == "Observing" then
  hs.status = "Suspended"
  hs.message = said(ready)
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = said(ready)
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(stalled)
  return hs
end

if ready.reason == "Expired" then
  hs.status = "Degraded"
  hs.message = said(ready)
  return hs
end

hs.status = "Progressing"
hs.message = said(ready)
return hs
