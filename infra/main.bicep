// Sluice on Azure: everything `azd up` provisions, in one resource group.
// The resources themselves are in resources.bicep; this file creates the group and
// hands the outputs back to azd, which writes them to .azure/<env>/.env and, through
// azure.yaml's k8s.kustomize.env, into the ConfigMap and the identity fields of
// k8s-keda/ (overlay infra/k8s/). No output carries a secret: passwords and keys go
// straight into Key Vault.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name (azd allows 64 characters of letters, digits, - _ . ( )); names the resource group (rg-<name>) and seeds the resource names')
param environmentName string

@minLength(1)
@description('Azure region of every resource')
param location string

// --- sizes (all parameters; defaults fit a first production environment)
@description('Event Hubs partitions: fixed at creation on Standard, and the KEDA maximum of ingest replicas')
@minValue(1)
@maxValue(32)
param eventHubPartitions int = 8

@description('Event Hubs namespace throughput units (Standard)')
@minValue(1)
@maxValue(40)
param eventHubCapacity int = 2

@description('Autoscale maximum RU/s of each table of cassandra-tables.json in throughput class events (events_by_*, critical_events_by_device, device_latest, ingest_audit_runs, ingest_audit; the minimum is a tenth of it)')
@minValue(1000)
param cassandraEventTableMaxThroughput int = 4000

@description('Autoscale maximum RU/s of each small state table (throughput class state: delayed_batches, feed_state, schema_migrations, sluice_meta)')
@minValue(1000)
param cassandraStateTableMaxThroughput int = 1000

@description('Azure Managed Redis SKU (Balanced_B0 .. Balanced_B1000, MemoryOptimized_*, ComputeOptimized_*)')
param redisSku string = 'Balanced_B1'

@description('PostgreSQL Flexible Server compute SKU and tier')
param postgresSku string = 'Standard_D2ds_v5'
// No Burstable: the built-in PgBouncer (pgbouncer.enabled, port 6432, which every worker
// connects to) exists only on the General Purpose and Memory Optimized tiers.
@allowed(['GeneralPurpose', 'MemoryOptimized'])
param postgresTier string = 'GeneralPurpose'

@description('PostgreSQL storage in GiB')
param postgresStorageGb int = 64

// --- backups and protection
@description('Cosmos DB (API for Cassandra) periodic backup: minutes between two full backups (60 .. 1440)')
@minValue(60)
@maxValue(1440)
param cosmosBackupIntervalMinutes int = 240

@description('Cosmos DB periodic backup: hours each backup is kept (8 .. 720, at least twice the interval); two copies are free, each further copy is billed as backup storage')
@minValue(8)
@maxValue(720)
param cosmosBackupRetentionHours int = 168

@description('Cosmos DB periodic backup storage redundancy: Geo (copied to the paired region), Zone or Local (a region without a pair)')
@allowed(['Geo', 'Zone', 'Local'])
param cosmosBackupStorageRedundancy string = 'Geo'

@description('A CanNotDelete lock on the storage account (dead letters, checkpoints), whose blob soft delete is off: remove the lock before azd down; creating it needs Owner or User Access Administrator')
param storageDeleteLock bool = true

@description('AKS node VM size, and the nodes the system node pool starts with (the cluster autoscaler keeps it between aksNodeCount and aksNodeMaxCount)')
param aksNodeSize string = 'Standard_D4ds_v5'
@minValue(1)
param aksNodeCount int = 3

@description('The most nodes the cluster autoscaler gives the pool: KEDA scales ingest up to eventHubPartitions pods of 0.5 CPU each, so 32 partitions need about 17 CPUs of requests with the lookups and the timers (5 nodes of Standard_D4ds_v5), before kube-system')
@minValue(1)
param aksNodeMaxCount int = 8

@description('Kubernetes version (tests/deploy validates the manifests against this minor)')
param kubernetesVersion string = '1.34'

// --- secrets azd asks for once and keeps in the environment (never in the repo)
@secure()
@description('Password of the PostgreSQL login sluice (stored in Key Vault as postgres-password)')
param postgresPassword string

@secure()
@description('Functions host master key (Key Vault functions-host-master-key): 32+ random bytes, base64')
param functionsMasterKey string

@secure()
@description('Functions host default function key (Key Vault functions-host-default-key)')
param functionsDefaultKey string

var tags = {
  'azd-env-name': environmentName
}

resource group 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module resources 'resources.bicep' = {
  name: 'sluice-resources'
  scope: group
  params: {
    environmentName: environmentName
    location: location
    tags: tags
    eventHubPartitions: eventHubPartitions
    eventHubCapacity: eventHubCapacity
    cassandraEventTableMaxThroughput: cassandraEventTableMaxThroughput
    cassandraStateTableMaxThroughput: cassandraStateTableMaxThroughput
    redisSku: redisSku
    postgresSku: postgresSku
    postgresTier: postgresTier
    postgresStorageGb: postgresStorageGb
    cosmosBackupIntervalMinutes: cosmosBackupIntervalMinutes
    cosmosBackupRetentionHours: cosmosBackupRetentionHours
    cosmosBackupStorageRedundancy: cosmosBackupStorageRedundancy
    storageDeleteLock: storageDeleteLock
    aksNodeSize: aksNodeSize
    aksNodeCount: aksNodeCount
    aksNodeMaxCount: aksNodeMaxCount
    kubernetesVersion: kubernetesVersion
    postgresPassword: postgresPassword
    functionsMasterKey: functionsMasterKey
    functionsDefaultKey: functionsDefaultKey
  }
}

// azd's AKS host reads these two to log in to the registry and the cluster.
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = resources.outputs.registryEndpoint
output AZURE_AKS_CLUSTER_NAME string = resources.outputs.aksName
output AZURE_RESOURCE_GROUP string = group.name

// Identity
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_APP_IDENTITY_CLIENT_ID string = resources.outputs.appIdentityClientId

// The ConfigMap's values (infra/k8s/kustomization.yaml maps each to its setting)
output AZURE_KEY_VAULT_NAME string = resources.outputs.keyVaultName
output AZURE_KEY_VAULT_URL string = resources.outputs.keyVaultUrl
output AZURE_EVENTHUB_NAMESPACE string = resources.outputs.eventHubNamespace
output AZURE_EVENTHUB_FQDN string = resources.outputs.eventHubFqdn
output AZURE_EVENTHUB_NAME string = resources.outputs.eventHubName
output AZURE_EVENTHUB_CONSUMER_GROUP string = resources.outputs.consumerGroup
output AZURE_EVENTHUB_PARTITIONS int = eventHubPartitions
// The ingest ScaledObject's fallback: half the partitions (two per replica), at least 1, so that it stays
// within maxReplicaCount (the partition count) for every count the parameter accepts.
output AZURE_INGEST_FALLBACK_REPLICAS int = max(1, eventHubPartitions / 2)
output AZURE_STORAGE_ACCOUNT string = resources.outputs.storageAccount
output AZURE_DEADLETTER_CONTAINER string = resources.outputs.deadLetterContainer
output AZURE_CASSANDRA_HOST string = resources.outputs.cassandraHost
output AZURE_CASSANDRA_USERNAME string = resources.outputs.cassandraUsername
output AZURE_CASSANDRA_LOCAL_DC string = resources.outputs.cassandraLocalDc
output AZURE_CASSANDRA_KEYSPACE string = resources.outputs.cassandraKeyspace
output AZURE_REDIS_URL string = resources.outputs.redisUrl
output AZURE_POSTGRES_HOST string = resources.outputs.postgresHost
output AZURE_POSTGRES_USER string = resources.outputs.postgresUser
output AZURE_POSTGRES_DATABASE string = resources.outputs.postgresDatabase
output AZURE_FUNCTIONS_HOST_ID string = resources.outputs.functionsHostId
output AZURE_LOG_ANALYTICS_WORKSPACE_ID string = resources.outputs.logAnalyticsWorkspaceId
output AZURE_APPLICATION_INSIGHTS_NAME string = resources.outputs.applicationInsightsName
