-- Argo CD health check of the Fleetward kinds (Tenant, Thing, Channel, Connection, User, Group),
-- from the Ready and Enforced conditions the operator writes. See docs/gitops.md for where it goes.
--
--   no status yet, or a status of an older generation   Progressing (the operator has not seen it)
--   Ready=True, reason Suspended (a suspended Tenant)    Suspended
--   Ready=False, reason CredentialsPending               Progressing (the operator is creating the key)
--   Ready=False, any other reason                        Degraded (the reason says what to fix)
--   Ready=True, Enforced=True                            Healthy
--   Ready=True, Enforced missing or False                Progressing (dataplanes still applying it)
--
-- Written for Lua 5.1, which Argo CD runs; tested with lua5.1 and lua5.4.
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c)
  local reason = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    return reason .. ": " .. c.message
  end
  return reason
end

-- A condition written for an older generation says nothing about the current spec.
local function stale(c)
  local generation = obj.metadata and obj.metadata.generation
  if generation == nil then
    return false
  end
  if obj.status ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration < generation then
    return true
  end
  return c.observedGeneration ~= nil and c.observedGeneration < generation
end

local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Fleetward operator to accept the resource"
  return hs
end
if stale(ready) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Fleetward operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end
if ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(ready)
  return hs
end
if ready.status ~= "True" then
  if ready.reason == "CredentialsPending" then
    hs.status = "Progressing"
  else
    hs.status = "Degraded"
  end
  hs.message = describe(ready)
  return hs
end

local enforced = condition("Enforced")
if enforced == nil then
  hs.status = "Progressing"
  hs.message = "Accepted; waiting for the dataplanes to enforce it"
  return hs
end
if enforced.status == "True" and not stale(enforced) then
  hs.status = "Healthy"
  hs.message = "Ready, and enforced by every connected dataplane"
  return hs
end
hs.status = "Progressing"
hs.message = describe(enforced)
return hs
