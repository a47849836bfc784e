// Run once by the mongo image, when its data volume is empty (docker-entrypoint-initdb.d),
// as the root user of MONGO_INITDB_ROOT_USERNAME: creates the worker's user, with
// readWrite on the worker's database only (find, update, insert, createIndex; no other
// database, no user or server administration). Changing a password later:
//   docker compose exec mongodb mongosh -u root -p --authenticationDatabase admin \
//     florist-server --eval 'db.changeUserPassword("florist-worker", "<new>")'
const name = process.env.FLORIST_MONGODB_DB;
const user = process.env.MONGODB_WORKER_USER;
const password = process.env.MONGODB_WORKER_PASSWORD;
if (!name || !user || !password) {
  throw new Error(
    "mongodb-init: FLORIST_MONGODB_DB, MONGODB_WORKER_USER and MONGODB_WORKER_PASSWORD must be set",
  );
}
db.getSiblingDB(name).createUser({
  user: user,
  pwd: password,
  roles: [{ role: "readWrite", db: name }],
});
print(`mongodb-init: user ${user} has readWrite on ${name}`);
