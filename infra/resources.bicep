// Every Azure resource Sluice runs on, and the least-privilege role assignments of its
// one workload identity. Names are lower case throughout: KEDA builds the checkpoint
// blob path from the namespace and hub names as given, while the Functions host writes
// it in lower case (python -m sluice doctor keda explains the trap).
param environmentName string
param location string
param tags object
param eventHubPartitions int
param eventHubCapacity int
param cassandraEventTableMaxThroughput int
param cassandraStateTableMaxThroughput int
param redisSku string
param postgresSku string
param postgresTier string
param postgresStorageGb int
param cosmosBackupIntervalMinutes int
param cosmosBackupRetentionHours int
param cosmosBackupStorageRedundancy string
param storageDeleteLock bool
param aksNodeSize string
param aksNodeCount int
param aksNodeMaxCount int
param kubernetesVersion string
@secure()
param postgresPassword string
@secure()
param functionsMasterKey string
@secure()
param functionsDefaultKey string

var token = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
// azd allows letters, digits and - _ . ( ) in an environment name; resource names take
// letters, digits and hyphens, so the others become hyphens (parentheses go). Names such as
// Managed Redis's and the Functions host id allow no leading, trailing or doubled hyphen:
// the words between hyphens are joined by one, and a hyphen the cut at 20 leaves last goes.
var words = filter(split(toLower(replace(replace(replace(replace(environmentName, '_', '-'), '.', '-'), '(', ''), ')', '')), '-'), word => !empty(word))
var cut = take(empty(words) ? 'env' : join(words, '-'), 20)
var name = endsWith(cut, '-') ? take(cut, length(cut) - 1) : cut
// For the names that allow no hyphen or at most 24 characters (storage, Key Vault).
var shortName = take(replace(name, '-', ''), 9)

// What Sluice's settings name (k8s-keda/configmap.yaml); changed together with it.
var eventHubName = 'telemetry'
var consumerGroupName = 'sluice'
var keyspaceName = 'sluice'
var postgresUser = 'sluice'
var postgresDatabase = 'sluice'
var kubernetesNamespace = 'sluice'
var serviceAccount = 'sluice'
// The Functions host's containers (checkpoints and ownership, timer and host locks) and
// Sluice's (dead letters, Parquet reference data): the only places the identity writes.
var checkpointContainer = 'azure-webjobs-eventhub'
var hostContainer = 'azure-webjobs-hosts'
var deadLetterContainer = 'sluice-deadletter'
var referenceContainer = 'sluice-reference'
var blobContainers = [checkpointContainer, hostContainer, deadLetterContainer, referenceContainer]

// Built-in role definitions (ids are the same in every tenant).
var roles = {
  eventHubsDataReceiver: 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

var cassandraTables = loadJsonContent('cassandra-tables.json').tables

// --- monitoring ----------------------------------------------------------------------

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${name}-${token}'
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 30
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${name}-${token}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true
  }
}

// Sluice's alerts (docs/observability.md), the same as k8s-keda/monitoring/prometheusrule.yaml:
// the KQL of alerts/*.kql over Application Insights' customMetrics, as log search alerts
// evaluated every 5 minutes that fire when the query returns a row. Attach an action group
// (actions.actionGroups) to be told.
var sluiceAlerts = [
  { name: 'eventhub-lag-growing', severity: 2, query: loadTextContent('alerts/eventhub-lag-growing.kql') }
  { name: 'audit-missing', severity: 1, query: loadTextContent('alerts/audit-missing.kql') }
  { name: 'deadletter-rate', severity: 2, query: loadTextContent('alerts/deadletter-rate.kql') }
  { name: 'changefeed-stale', severity: 2, query: loadTextContent('alerts/changefeed-stale.kql') }
  { name: 'enrichment-stale', severity: 2, query: loadTextContent('alerts/enrichment-stale.kql') }
  { name: 'lookup-5xx-rate', severity: 1, query: loadTextContent('alerts/lookup-5xx-rate.kql') }
]

resource alerts 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = [for alert in sluiceAlerts: {
  name: 'alert-${name}-${alert.name}'
  location: location
  tags: tags
  properties: {
    displayName: 'Sluice: ${alert.name}'
    severity: alert.severity
    enabled: true
    scopes: [insights.id]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: alert.query
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
        }
      ]
    }
  }
}]

// --- identity ------------------------------------------------------------------------

// What every Sluice pod runs as, and what KEDA's operator authenticates as for the
// ingest scaler (TriggerAuthentication identityId): every role assignment below goes
// to it, except the kubelet's AcrPull.
resource app 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${name}-${token}'
  location: location
  tags: tags
}

// --- container registry and cluster --------------------------------------------------

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: 'cr${replace(name, '-', '')}${token}'
  location: location
  tags: tags
  sku: { name: 'Standard' }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
  }
}

resource aks 'Microsoft.ContainerService/managedClusters@2024-09-01' = {
  name: 'aks-${name}-${token}'
  location: location
  tags: tags
  identity: { type: 'SystemAssigned' }
  properties: {
    kubernetesVersion: kubernetesVersion
    dnsPrefix: 'aks-${name}-${token}'
    enableRBAC: true
    agentPoolProfiles: [
      {
        name: 'system'
        mode: 'System'
        count: aksNodeCount
        vmSize: aksNodeSize
        osType: 'Linux'
        osSKU: 'AzureLinux'
        type: 'VirtualMachineScaleSets'
        availabilityZones: ['1', '2', '3']
        // KEDA adds ingest pods up to the partition count: the cluster autoscaler adds the nodes they need, or the
        // pods past what aksNodeCount nodes hold would stay Pending and the backlog drain at a fraction of the rate
        enableAutoScaling: true
        minCount: aksNodeCount
        maxCount: max(aksNodeCount, aksNodeMaxCount)
        maxPods: 110
        osDiskType: 'Ephemeral'
        osDiskSizeGB: 128
      }
    ]
    networkProfile: {
      networkPlugin: 'azure'
      networkPluginMode: 'overlay'
      networkDataplane: 'cilium'
      // k8s-keda/networkpolicy.yaml needs an engine.
      networkPolicy: 'cilium'
    }
    oidcIssuerProfile: { enabled: true }
    securityProfile: {
      workloadIdentity: { enabled: true }
    }
    workloadAutoScalerProfile: {
      keda: { enabled: true }
    }
    addonProfiles: {
      kubeDashboard: { enabled: false }
      azureKeyvaultSecretsProvider: {
        enabled: true
        config: {
          enableSecretRotation: 'true'
          rotationPollInterval: '2m'
        }
      }
      omsagent: {
        enabled: true
        config: {
          logAnalyticsWorkspaceResourceID: logs.id
          useAADAuth: 'true'
        }
      }
    }
    autoUpgradeProfile: {
      upgradeChannel: 'patch'
      nodeOSUpgradeChannel: 'NodeImage'
    }
  }
}

// Container insights signs in with the cluster's managed identity (useAADAuth above). In that
// mode its agent collects nothing until a data collection rule with the ContainerInsights
// extension is associated with the cluster: the pods' logs, events and inventory to `logs`.
resource containerInsightsRule 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: 'MSCI-${name}-${token}'
  location: location
  tags: tags
  kind: 'Linux'
  properties: {
    dataSources: {
      extensions: [
        {
          name: 'ContainerInsightsExtension'
          extensionName: 'ContainerInsights'
          streams: [ 'Microsoft-ContainerInsights-Group-Default' ]
          extensionSettings: {
            dataCollectionSettings: {
              interval: '1m'
              namespaceFilteringMode: 'Off'
              enableContainerLogV2: true
            }
          }
        }
      ]
    }
    destinations: {
      logAnalytics: [ { name: 'workspace', workspaceResourceId: logs.id } ]
    }
    dataFlows: [ { streams: [ 'Microsoft-ContainerInsights-Group-Default' ], destinations: [ 'workspace' ] } ]
  }
}

resource containerInsightsAssociation 'Microsoft.Insights/dataCollectionRuleAssociations@2023-03-11' = {
  name: 'ContainerInsightsExtension'
  scope: aks
  properties: {
    description: 'Container insights of the cluster; deleting it stops the collection of its logs.'
    dataCollectionRuleId: containerInsightsRule.id
  }
}

// Sluice's pods (ServiceAccount sluice/sluice) and KEDA's operator act as `app`.
// Federated credentials of one identity must be written one after the other.
resource podsCredential 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: app
  name: 'sluice-pods'
  properties: {
    issuer: aks.properties.oidcIssuerProfile.issuerURL
    subject: 'system:serviceaccount:${kubernetesNamespace}:${serviceAccount}'
    audiences: ['api://AzureADTokenExchange']
  }
}

resource kedaCredential 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: app
  name: 'keda-operator'
  dependsOn: [podsCredential]
  properties: {
    issuer: aks.properties.oidcIssuerProfile.issuerURL
    subject: 'system:serviceaccount:kube-system:keda-operator'
    audiences: ['api://AzureADTokenExchange']
  }
}

// --- Event Hubs ----------------------------------------------------------------------

resource eventHubNamespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: 'evhns-${name}-${token}'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
    capacity: eventHubCapacity
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource eventHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: eventHubNamespace
  name: eventHubName
  properties: {
    partitionCount: eventHubPartitions
    messageRetentionInDays: 7
  }
}

resource consumerGroup 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = {
  parent: eventHub
  name: consumerGroupName
}

// --- storage -------------------------------------------------------------------------

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'st${shortName}${token}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_ZRS' }
  properties: {
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    defaultToOAuthAuthentication: true
  }
}

// The account is also the Event Hubs checkpoint store: the host rewrites every partition's
// checkpoint after each batch and renews its ownership blobs every few seconds, and KEDA reads
// them. Microsoft's checkpoint store guidance (Event Hubs: troubleshoot checkpoint store issues)
// wants blob soft delete and versioning off there: each rewrite would otherwise keep a deleted
// copy or a version, with processing delays and failed checkpoints under load. Sluice reads
// the host's AzureWebJobsStorage for its dead letters, so they share the account and lose
// blob-level undelete; container soft delete stays (it does not touch blob writes), and the
// lock below keeps the account itself from being deleted (docs/deploy.md,
// "Backups, restore and the storage lock").
resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: { enabled: false }
    isVersioningEnabled: false
    containerDeleteRetentionPolicy: { enabled: true, days: 7 }
  }
}

// CanNotDelete on the account that holds the dead letters (and the checkpoints): deleting it,
// or the resource group (`azd down`), is refused until the lock is removed. Creating a lock
// takes Microsoft.Authorization/locks/write (Owner or User Access Administrator).
resource storageLock 'Microsoft.Authorization/locks@2020-05-01' = if (storageDeleteLock) {
  name: 'sluice-storage-cannot-delete'
  scope: storage
  properties: {
    level: 'CanNotDelete'
    notes: 'Holds Sluice dead letters and the Event Hubs checkpoints; blob soft delete is off (checkpoint store). Remove before azd down.'
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for container in blobContainers: {
  parent: blobService
  name: container
  properties: { publicAccess: 'None' }
}]

// --- Cosmos DB for Apache Cassandra -----------------------------------------------------

resource cosmos 'Microsoft.DocumentDB/databaseAccounts@2024-11-15' = {
  name: 'cosmos-${name}-${token}'
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    capabilities: [{ name: 'EnableCassandra' }]
    locations: [{ locationName: location, failoverPriority: 0, isZoneRedundant: true }]
    consistencyPolicy: { defaultConsistencyLevel: 'Session' }
    minimalTlsVersion: 'Tls12'
    // Periodic: continuous backup (point-in-time restore) is not offered for the API for
    // Cassandra. A full backup every cosmosBackupIntervalMinutes, each kept
    // cosmosBackupRetentionHours; a restore is a support request, into a new account
    // (docs/deploy.md, "Backups, restore and the storage lock").
    backupPolicy: { type: 'Periodic', periodicModeProperties: { backupIntervalInMinutes: cosmosBackupIntervalMinutes, backupRetentionIntervalInHours: cosmosBackupRetentionHours, backupStorageRedundancy: cosmosBackupStorageRedundancy } }
  }
}

resource keyspace 'Microsoft.DocumentDB/databaseAccounts/cassandraKeyspaces@2024-11-15' = {
  parent: cosmos
  name: keyspaceName
  properties: {
    resource: { id: keyspaceName }
  }
}

// The tables of shared/adapters/cassandra/migrations.py (cassandra-tables.json, checked
// against what the migrations create by tests/deploy/test_infra.py), each with autoscale
// throughput. `python -m sluice migrate` then finds them and only records its version.
resource tables 'Microsoft.DocumentDB/databaseAccounts/cassandraKeyspaces/tables@2024-11-15' = [for table in cassandraTables: {
  parent: keyspace
  name: table.name
  properties: {
    resource: {
      id: table.name
      schema: table.schema
    }
    options: {
      autoscaleSettings: {
        maxThroughput: table.throughput == 'events' ? cassandraEventTableMaxThroughput : cassandraStateTableMaxThroughput
      }
    }
  }
}]

// --- Azure Managed Redis -----------------------------------------------------------------

resource redis 'Microsoft.Cache/redisEnterprise@2025-04-01' = {
  name: 'redis-${name}-${token}'
  location: location
  tags: tags
  sku: { name: redisSku }
  properties: {
    minimumTlsVersion: '1.2'
  }
}

resource redisDatabase 'Microsoft.Cache/redisEnterprise/databases@2025-04-01' = {
  parent: redis
  name: 'default'
  properties: {
    clientProtocol: 'Encrypted'
    port: 10000
    // OSS cluster policy: clients talk to each shard directly (SLUICE_REDIS_CLUSTER=true).
    clusteringPolicy: 'OSSCluster'
    // Sluice's keys all carry a TTL; under memory pressure the oldest go first.
    evictionPolicy: 'VolatileLRU'
    // Entra ID only: the pods sign in as the workload identity (SLUICE_REDIS_AUTH=entra), so no key exists to leak.
    accessKeysAuthentication: 'Disabled'
  }
}

// The workload identity as a Redis user: the object id is the user name its tokens sign in with.
resource redisUser 'Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments@2025-04-01' = {
  parent: redisDatabase
  name: 'sluiceapp'
  properties: {
    accessPolicyName: 'default'
    user: { objectId: app.properties.principalId }
  }
}

// --- PostgreSQL Flexible Server with its built-in PgBouncer ------------------------------
// (built in on the General Purpose and Memory Optimized tiers only: main.bicep's postgresTier
// allows no other).

resource postgres 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: 'psql-${name}-${token}'
  location: location
  tags: tags
  sku: {
    name: postgresSku
    tier: postgresTier
  }
  properties: {
    version: '16'
    administratorLogin: postgresUser
    administratorLoginPassword: postgresPassword
    storage: { storageSizeGB: postgresStorageGb, autoGrow: 'Enabled' }
    backup: { backupRetentionDays: 14, geoRedundantBackup: 'Disabled' }
    highAvailability: { mode: 'Disabled' }
    network: { publicNetworkAccess: 'Enabled' }
    authConfig: { activeDirectoryAuth: 'Disabled', passwordAuth: 'Enabled' }
  }
}

resource pgbouncer 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: postgres
  name: 'pgbouncer.enabled'
  properties: {
    value: 'true'
    source: 'user-override'
  }
}

resource requireTls 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: postgres
  name: 'require_secure_transport'
  dependsOn: [pgbouncer]
  properties: {
    value: 'on'
    source: 'user-override'
  }
}

// A server takes one change at a time: configurations, database and firewall in a row.
resource postgresDb 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = {
  parent: postgres
  name: postgresDatabase
  dependsOn: [requireTls]
  properties: { charset: 'UTF8', collation: 'en_US.utf8' }
}

// AKS egress addresses are not fixed: allow Azure services (0.0.0.0), TLS and the
// password still required. A private endpoint is the next step (docs/deploy.md).
resource postgresAzure 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2024-08-01' = {
  parent: postgres
  name: 'allow-azure-services'
  dependsOn: [postgresDb]
  properties: { startIpAddress: '0.0.0.0', endIpAddress: '0.0.0.0' }
}

// --- Key Vault and the secrets ---------------------------------------------------------

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kv${shortName}${token}'
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 30
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
  }
}

// The secret names k8s-keda/ refers to (*_PASSWORD_SECRET, the SecretProviderClass), one
// resource each: their values are only known at deployment time.
var secretNames = [
  'cassandra-password'
  'postgres-password'
  'functions-host-master-key'
  'functions-host-default-key'
  'appinsights-connection-string'
]

resource cassandraSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'cassandra-password'
  properties: { value: cosmos.listKeys().primaryMasterKey, contentType: 'text/plain' }
}

resource postgresSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'postgres-password'
  properties: { value: postgresPassword, contentType: 'text/plain' }
}

resource masterKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'functions-host-master-key'
  properties: { value: functionsMasterKey, contentType: 'text/plain' }
}

resource defaultKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'functions-host-default-key'
  properties: { value: functionsDefaultKey, contentType: 'text/plain' }
}

resource insightsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'appinsights-connection-string'
  properties: { value: insights.properties.ConnectionString, contentType: 'text/plain' }
}

resource secretRefs 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = [for secret in secretNames: {
  parent: vault
  name: secret
}]

// --- role assignments: least privilege, all to `app` (and AcrPull to the kubelet) --------

// Receive from the one hub (the ingest trigger, and KEDA reading partition positions).
resource hubReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(eventHub.id, app.id, roles.eventHubsDataReceiver)
  scope: eventHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataReceiver)
    principalId: app.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Blob data owner of each container Sluice and its host write (leases need owner), not
// of the account.
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (container, i) in blobContainers: {
  name: guid(containers[i].id, app.id, roles.storageBlobDataOwner)
  scope: containers[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: app.properties.principalId
    principalType: 'ServicePrincipal'
  }
}]

// Read each secret Sluice and the CSI driver read, not the whole vault.
resource secretReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (secret, i) in secretNames: {
  name: guid(vault.id, secret, app.id, roles.keyVaultSecretsUser)
  scope: secretRefs[i]
  dependsOn: [cassandraSecret, postgresSecret, masterKeySecret, defaultKeySecret, insightsSecret]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: app.properties.principalId
    principalType: 'ServicePrincipal'
  }
}]

// Send telemetry to Application Insights, whose local (key) auth is off: the pods sign in with the
// workload identity (APPLICATIONINSIGHTS_AUTHENTICATION_STRING in the ConfigMap).
resource insightsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, app.id, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: app.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The nodes pull the image (the kubelet's identity, not the app's).
resource kubeletPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, aks.id, roles.acrPull)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull)
    principalId: aks.properties.identityProfile.kubeletidentity.objectId
    principalType: 'ServicePrincipal'
  }
}

output registryEndpoint string = registry.properties.loginServer
output aksName string = aks.name
output appIdentityClientId string = app.properties.clientId
output keyVaultName string = vault.name
output keyVaultUrl string = vault.properties.vaultUri
output eventHubNamespace string = eventHubNamespace.name
output eventHubFqdn string = '${eventHubNamespace.name}.servicebus.windows.net'
output eventHubName string = eventHub.name
output consumerGroup string = consumerGroup.name
output storageAccount string = storage.name
output deadLetterContainer string = deadLetterContainer
output cassandraHost string = '${cosmos.name}.cassandra.cosmos.azure.com'
output cassandraUsername string = cosmos.name
output cassandraLocalDc string = cosmos.properties.writeLocations[0].locationName
output cassandraKeyspace string = keyspace.name
output redisUrl string = 'rediss://${redis.properties.hostName}:${redisDatabase.properties.port}'
output postgresHost string = postgres.properties.fullyQualifiedDomainName
output postgresUser string = postgresUser
output postgresDatabase string = postgresDb.name
output functionsHostId string = take('sluice-${name}', 32)
output logAnalyticsWorkspaceId string = logs.id
output applicationInsightsName string = insights.name
