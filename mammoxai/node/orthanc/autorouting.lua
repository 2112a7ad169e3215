-- mammoxai auto-routing for Orthanc (>= 1.10): every stored mammogram goes to the mammoxai node.
--
-- The node is the DicomModalities entry named "mammoxai". Each new instance with
-- Modality MG is C-STOREd to it synchronously through the REST API, so the outcome
-- is known (Lua SendToModality only queues a job and reports success whatever
-- happens). The outcome is written to the instance's "MammoxaiRouting" metadata
-- ("routed" / "failed"); failed instances are retried on every later stored
-- instance, when a study becomes stable, and on the heart beat (Orthanc >= 1.11,
-- LuaHeartBeatPeriod). The node ignores its own results, so routing them back
-- (they may carry Modality MG) cannot make a loop; they are skipped here too
-- when they come from the node's AE title, to save the round trip.

local TARGET = 'mammoxai'
local pending = {}

local function nodeAet()
  local ok, modality = pcall(function()
    return ParseJson(RestApiGet('/modalities/' .. TARGET .. '/configuration'))
  end)
  if ok and modality ~= nil then return modality['AET'] end
  return nil
end

local function setRouting(instanceId, value)
  pcall(function()
    RestApiPut('/instances/' .. instanceId .. '/metadata/MammoxaiRouting', value)
  end)
end

local function route(instanceId)
  local body = '{"Resources":["' .. instanceId .. '"],"Synchronous":true}'
  -- RestApiPost returns nil when the store fails (it does not raise); a partial failure is counted
  local ok, answer = pcall(RestApiPost, '/modalities/' .. TARGET .. '/store', body)
  local err = answer
  if ok and answer ~= nil then
    local parsed = ParseJson(answer)
    if parsed ~= nil and (parsed['FailedInstancesCount'] or 0) > 0 then
      ok, err = false, 'the node refused the instance'
    end
  else
    ok = false
  end
  if ok then
    pending[instanceId] = nil
    setRouting(instanceId, 'routed')
    print('mammoxai: routed ' .. instanceId)
    return true
  end
  pending[instanceId] = true
  setRouting(instanceId, 'failed')
  print('mammoxai: routing ' .. instanceId .. ' failed, will retry: ' .. tostring(err))
  return false
end

local function retryPending()
  for id, _ in pairs(pending) do
    if not route(id) then return end   -- node still down: stop this round
  end
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags['Modality'] ~= 'MG' then
    retryPending()
    return
  end
  if origin ~= nil and origin['RequestOrigin'] == 'DicomProtocol' and origin['RemoteAet'] == nodeAet() then
    return   -- one of the node's own results
  end
  if route(instanceId) then retryPending() end
end

function OnStableStudy(studyId, tags, metadata)
  retryPending()
end

function OnHeartBeat()
  retryPending()
end
